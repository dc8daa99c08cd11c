\ir ../../sql/antiban.sql
