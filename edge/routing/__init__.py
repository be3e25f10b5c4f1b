"""Where a request goes: the regions ranked from the replicated state, the primary's hold, the attempt plan,
and the replica choice with its breakers and engine signals."""
