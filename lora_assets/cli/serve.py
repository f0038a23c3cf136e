"""`serve-files`: the local blob store over HTTP on 127.0.0.1, for the links in the UI."""

from __future__ import annotations

import click

from lora_assets.settings import Settings


@click.command("serve-files")
@click.option("--port", type=click.IntRange(0, 65535), default=3031, show_default=True)
def serve_files(port: int) -> None:
    """Serve LORA_DATA_DIR/blobs read-only at http://127.0.0.1:PORT until Ctrl-C. Set
    LORA_FILES_URL=http://127.0.0.1:PORT for the code location (`make ui` does both) and every
    training-file output in the UI's metadata becomes a link that opens or downloads the file."""
    import time

    from lora_assets.store.file_server import serve_directory

    settings = Settings.from_env()
    if settings.s3_bucket:
        raise click.UsageError("the blob store is S3 (LORA_S3_BUCKET): its metadata links are presigned URLs already")
    root = settings.data_dir / "blobs"
    root.mkdir(parents=True, exist_ok=True)
    server = serve_directory(root, port=port)
    click.echo(f"serving {root} at http://127.0.0.1:{server.server_address[1]} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
