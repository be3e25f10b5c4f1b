"""Carrying an attempt to a replica and the answer back: the keep-alive upstream pool, the forwarder that
walks the attempt plan, hedging, the retry budget and round-trip probes."""
