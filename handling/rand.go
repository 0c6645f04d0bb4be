package handling

import "math/rand/v2"

// globalRand is the default jitter source. math/rand/v2's top-level
// functions are safe for concurrent use, which the handler needs since it
// serves many requests at once.
type globalRand struct{}

func (globalRand) Float64() float64 { return rand.Float64() }
