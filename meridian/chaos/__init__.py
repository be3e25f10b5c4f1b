"""`meridian chaos`: a randomized fault campaign against a real local fleet, its history recorded, and a
checker that reads the history for what must never happen (lost operator intent, state going backwards,
traffic to a region after its dial went to 0, errors the design does not allow)."""
