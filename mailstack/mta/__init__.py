"""The mta: SMTP listeners (25/587/465), durable queue, queue runner."""
