"""``fairnode tls``: DICOM TLS helpers (development certificates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fairnode.cli.common import console, fail

app = typer.Typer(help="DICOM TLS: development certificates.", no_args_is_help=True)


@app.command("make-dev-certs")
def make_dev_certs(
    out: Annotated[Path, typer.Option("--out", help="Folder to write ca.pem, server.pem/.key, client.pem/.key.")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="DNS name or IP address of the node (repeatable; default localhost, 127.0.0.1, ::1)."
        ),
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 365,
) -> None:
    """Write a test CA, a node (server) certificate and a client certificate, for trying DICOM TLS out.

    Not for clinical use: install certificates from the hospital's own CA (docs/security.md).
    """
    from dicom_node.dev_certs import make_dev_certificates

    hosts = tuple(host) if host else ("localhost", "127.0.0.1", "::1")
    try:
        written = make_dev_certificates(out, hosts=hosts, days=days)
    except (OSError, ValueError) as exc:
        fail(f"cannot write development certificates to {out}: {exc}")
    table = Table("file", "what")
    table.add_row(str(written.ca_certificate), "test CA certificate (trust it: tls.ca_file, destination tls.ca_file)")
    table.add_row(str(written.ca_key), "test CA key (keep it away from the node)")
    table.add_row(str(written.server_certificate), f"node certificate for {', '.join(hosts)} (tls.certificate)")
    table.add_row(str(written.server_key), "node key (tls.private_key)")
    table.add_row(str(written.client_certificate), "client certificate for a test sender (storescu +tls)")
    table.add_row(str(written.client_key), "client key")
    console.print(table)
