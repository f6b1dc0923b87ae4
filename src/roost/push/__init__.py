"""Push notifications for offline users: the webhook notifier (webhook.py)."""
