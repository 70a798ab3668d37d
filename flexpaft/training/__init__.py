"""The training engine: the template stream (sampling), rendered batches (data, loader), the
losses (answer, options, consistency), LoRA through PEFT, the loop with checkpoints, and the
memory and distributed options. It names no method: ``flexpaft.methods`` decides what it trains.
"""
