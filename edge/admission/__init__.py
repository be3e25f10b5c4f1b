"""Whether and when a request goes ahead: the client's input and place, its key, limits and budget, the fair
queue, the saturation gate and waking a pool at zero."""
