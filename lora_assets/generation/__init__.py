"""Claude generation: client, pricing, runner, loopback simulator."""
