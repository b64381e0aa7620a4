"""The HTTP/1.1 server protocol: request reader, connection protocol, answer writer."""
