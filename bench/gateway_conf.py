"""The gateway's configuration in every bench set-up (compare.py, compare_h2.py).

A template for ``str.format`` (``{name}`` fields are filled in by ``Bench``),
in two variants of one text so that the HTTP/1.1 and HTTP/2 rows can never
drift apart: the HTTP/1.1 rows require the client certificate and an
``auth: client`` route, as NGINX's rows do; the HTTP/2 row offers ``h2`` and
asks for no certificate, because h2load cannot send one.
"""

_TEMPLATE = """\
issuer: https://localhost:{port}
listeners:
  - bind: 127.0.0.1:{port}
    public_url: https://localhost:{port}
@HTTP2@    tls:
      cert: {cert}
      key: {key}
      client_ca: {ca}
@CLIENT_CERTS@
admin:
  bind: 127.0.0.1:{admin_port}
registry:
  kind: yaml
  path: {registry}
tokens:
  signing_keys: [{signing_key}]
routes:
  - prefix: /
    upstream: http://127.0.0.1:{upstream_port}
    auth: @AUTH@
limits:
  keepalive_timeout: {ka}
logging:
  level: WARNING
{access_log}"""


def _variant(*, http2: bool) -> str:
    if http2:
        certs = (
            "      # h2load sends no client certificate (see NO_CLIENT_CERT_NOTE).\n"
            "      client_certs: optional"
        )
        return (
            _TEMPLATE.replace("@HTTP2@", "    http2: true\n")
            .replace("@CLIENT_CERTS@", certs)
            .replace("@AUTH@", "none")
        )
    return (
        _TEMPLATE.replace("@HTTP2@", "")
        .replace("@CLIENT_CERTS@", "      client_certs: required")
        .replace("@AUTH@", "client")
    )


GATEWAY = _variant(http2=False)
GATEWAY_H2 = _variant(http2=True)
