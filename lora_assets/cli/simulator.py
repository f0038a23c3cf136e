"""`simulate-claude`: serve the loopback Claude simulator with chosen faults, contract and limits."""

from __future__ import annotations

import click


@click.command("simulate-claude")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--latency", default=0.0, help="Seconds added to each /v1/messages response.")
@click.option("--strict/--lenient", default=None, envvar="LORA_SIM_STRICT",
              help="Refuse bodies outside the SDK's request types and the published limits (default: strict).")
@click.option("--rpm", default=None, type=click.IntRange(min=1), envvar="LORA_SIM_RPM",
              help="Requests per minute, per model (token bucket; 429 + retry-after in seconds).")
@click.option("--itpm", default=None, type=click.IntRange(min=1), envvar="LORA_SIM_ITPM",
              help="Input tokens per minute, per model (cache reads not counted).")
@click.option("--otpm", default=None, type=click.IntRange(min=1), envvar="LORA_SIM_OTPM",
              help="Output tokens per minute, per model (max_tokens reserved, settled to the actual output).")
@click.option("--rate-window", default=60.0, type=click.FloatRange(min=0, min_open=True), show_default=True,
              help="Seconds over which a bucket refills its whole limit.")
@click.option("--thinking-scale", default=None, type=click.FloatRange(min=0), envvar="LORA_SIM_THINKING_SCALE",
              help="Multiplier on the thinking tokens of models that think (default 1).")
@click.option("--batch-cache-hit-rate", default=None, type=click.FloatRange(0, 1), envvar="LORA_SIM_BATCH_CACHE_HIT_RATE",
              help="Share of batch requests that read a cached prefix (best effort; default 0.1).")
@click.option("--overload-rate", default=0.0, help="Share of requests answered 529.")
@click.option("--error-rate", default=0.0, help="Share of requests answered 500.")
@click.option("--truncation-rate", default=0.0, help="Share of responses cut with stop_reason max_tokens.")
@click.option("--malformed-rate", default=0.0, help="Share of responses with broken JSON.")
@click.option("--refusal-rate", default=0.0, help="Share of responses that refuse.")
def simulate_claude(host, port, latency, strict, rpm, itpm, otpm, rate_window, thinking_scale, batch_cache_hit_rate,
                    overload_rate, error_rate, truncation_rate, malformed_rate, refusal_rate) -> None:
    """Serve the loopback Claude simulator (Messages, count_tokens, Message Batches)."""
    from lora_assets.generation.simulator import FaultConfig, serve

    # Options left unset keep FaultConfig's defaults (which read the same environment variables).
    chosen = {"strict": strict, "thinking_scale": thinking_scale, "batch_cache_hit_rate": batch_cache_hit_rate}
    config = FaultConfig(
        latency_s=latency, rpm_limit=rpm, itpm_limit=itpm, otpm_limit=otpm, rate_window_s=rate_window,
        overload_rate=overload_rate, server_error_rate=error_rate,
        truncation_rate=truncation_rate, malformed_rate=malformed_rate, refusal_rate=refusal_rate,
        **{name: value for name, value in chosen.items() if value is not None},
    )
    mode = "strict" if config.strict else "lenient"
    click.echo(f"Claude simulator on http://{host}:{port} ({mode}; RPM {config.rpm():,}, ITPM {config.itpm():,}, "
               f"OTPM {config.otpm():,} per model) — set ANTHROPIC_BASE_URL to use it")
    serve(host, port, config)
