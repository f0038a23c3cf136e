"""`simulate-claude`: serve the loopback Claude simulator with chosen faults."""

from __future__ import annotations

import click


@click.command("simulate-claude")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--latency", default=0.0, help="Seconds added to each /v1/messages response.")
@click.option("--rpm", default=None, type=int, help="Requests per minute before 429 + retry-after-ms.")
@click.option("--overload-rate", default=0.0, help="Share of requests answered 529.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500.")
@click.option("--truncation-rate", default=0.0, help="Share of responses cut with stop_reason max_tokens.")
@click.option("--malformed-rate", default=0.0, help="Share of responses with broken JSON.")
@click.option("--refusal-rate", default=0.0, help="Share of responses that refuse.")
def simulate_claude(host, port, latency, rpm, overload_rate, error_rate, truncation_rate, malformed_rate, refusal_rate) -> None:
    """Serve the loopback Claude simulator (Messages, count_tokens, Message Batches)."""
    from lora_assets.generation.simulator import FaultConfig, serve

    config = FaultConfig(
        latency_s=latency, rpm_limit=rpm, overload_rate=overload_rate, server_error_rate=error_rate,
        truncation_rate=truncation_rate, malformed_rate=malformed_rate, refusal_rate=refusal_rate,
    )
    click.echo(f"Claude simulator on http://{host}:{port} (set ANTHROPIC_BASE_URL to use it)")
    serve(host, port, config)
