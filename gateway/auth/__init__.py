"""Who is on this TLS connection: certificate → identity → registered client.

The peer certificate is fixed for the life of a connection
(docs/design/client-certificates.md), so the result is cached per connection
and recomputed only when the registry or the trust material has changed
since: a client removed from the registry, or a pin removed from the trust
store, is refused on its next request even on a keep-alive connection.
An accepted identity also serves the same certificate's next connections
for a while (recent.py), under the same generations.

* outcome.py: ``ConnectionAuth``, what was decided about one connection;
* authenticator.py: the ``Authenticator`` of one listener;
* recent.py: the accepted identities kept across connections.

Behind a TLS-terminating load balancer (``forwarded_client_cert``), a
connection from a trusted proxy carries many clients: the identity then comes
from the forwarded certificate header alone (never from the proxy's own TLS
certificate), is verified like a handshake certificate (chain.py), and is
cached per (connection, header value).  From any other source the header is
ignored (and stripped before forwarding, headers.py).
"""

from gateway.auth.authenticator import Authenticator
from gateway.auth.outcome import ConnectionAuth

__all__ = ["Authenticator", "ConnectionAuth"]
