"""What a child asks for: dispatch and service calls, outbound fetch (client, egress policy, redirects)."""
