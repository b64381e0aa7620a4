"""NGINX configuration pieces every bench set-up shares (compare.py, compare_h2.py).

Templates for ``str.format``: ``{{``/``}}`` are literal braces, ``{name}``
fields are filled in by ``Bench``.  One copy of the identity headers NGINX
sets, so the HTTP/1.1 and HTTP/2 rows can never drift apart.
"""

NGINX_HEAD = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {conns}; }}
http {{
    access_log off;
    keepalive_timeout {ka}s;
    keepalive_requests 100000000;
"""

# The registry: verified subject DN -> client id (unknown subject: "", then 403
# where a certificate is required), and the keep-alive pool to the upstream.
NGINX_BACKEND = """\
    map $ssl_client_s_dn $client_id {{
        default "";
        "{dn}" "{client_id}";
    }}
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}
"""

NGINX_TLS = """\
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
"""

NGINX_PROXY = """\
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
"""

# proxy_set_header replaces any caller-sent header of that name; "" removes
# it; names with "_" are dropped (ignore_invalid_headers).  Empty without a
# certificate (the h2 row), which removes the caller's copy too.
NGINX_IDENTITY_HEADERS = """\
            proxy_set_header X-Client-Id $client_id;
            proxy_set_header X-Client-Cert-Subject $ssl_client_s_dn;
            proxy_set_header X-Client-Cert-Thumbprint $ssl_client_fingerprint;
            proxy_set_header X-Client-Cert-Sha256 "";
            proxy_set_header X-Forwarded-Client-Cert "";
            proxy_set_header Client-Cert "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"""
