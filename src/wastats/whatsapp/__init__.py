"""WhatsApp Cloud API webhooks: signature check, typed events and the body parser."""
