from oraclewad.services.broadcast.app import MIGRATIONS, build_app
from oraclewad.services.runtime import run_service

if __name__ == "__main__":
    run_service("broadcast", build_app, migrations=MIGRATIONS)
