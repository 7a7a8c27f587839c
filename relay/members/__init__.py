"""Members: API keys and authentication, enrolment, reply forwarding, member webhooks."""
