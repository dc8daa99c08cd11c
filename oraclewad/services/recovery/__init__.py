"""Recovery service: order webhooks from the tenant's shop -> WhatsApp messages (`python -m` runs it)."""
