"""`meridian pressure`: the ten pressure tests of the scaling design, run against a real local fleet with an
open-loop load, each judged on its scaled criteria and on evidence that its mechanism acted."""
