"""HTTP in: the h11 server, ingress (route a request to its script, answer) and the route table."""
