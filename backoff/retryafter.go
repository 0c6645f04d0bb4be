package backoff

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// httpDateLayouts are the three forms RFC 9110 §5.6.7 obliges a recipient to accept, the same
// set net/http.ParseTime tries. They are spelled out here to keep this leaf package free of
// net/http.
var httpDateLayouts = []string{
	"Mon, 02 Jan 2006 15:04:05 GMT", // IMF-fixdate, what servers send today
	time.RFC850,                     // obsolete RFC 850 form
	time.ANSIC,                      // obsolete asctime form, implicitly GMT
}

// maxDelaySeconds is the largest whole-second count a time.Duration can hold.
const maxDelaySeconds = math.MaxInt64 / int64(time.Second)

// ParseRetryAfter parses an HTTP Retry-After value: a non-negative integer of seconds, or an HTTP
// date strictly after now, whose delay is rounded up to whole seconds so the retry never comes
// before the moment the server named. Surrounding whitespace is ignored.
//
// It reports false for anything else: empty, signed ("-5", "+5"), fractional or non-numeric
// values, dates at or before now, dates in a zone other than GMT/UTC (HTTP dates are always GMT,
// and guessing an abbreviation's offset could be hours off), and delays too large for a
// time.Duration. Callers then fall back to their own backoff.
func ParseRetryAfter(value string, now time.Time) (time.Duration, bool) {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0, false
	}
	if isDigits(value) {
		secs, err := strconv.ParseInt(value, 10, 64)
		if err != nil || secs > maxDelaySeconds {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	at, ok := parseHTTPDate(value)
	if !ok {
		return 0, false
	}
	// Sub saturates instead of overflowing, so a saturated wait rounds up past maxDelaySeconds
	// and is rejected below like any other unrepresentable delay.
	wait := at.Sub(now)
	if wait <= 0 {
		return 0, false
	}
	secs := int64(wait / time.Second)
	if wait%time.Second != 0 {
		secs++
	}
	if secs > maxDelaySeconds {
		return 0, false
	}
	return time.Duration(secs) * time.Second, true
}

// isDigits enforces the delay-seconds grammar (1*DIGIT), which strconv alone would widen to
// accept a sign.
func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return len(s) > 0
}

func parseHTTPDate(value string) (time.Time, bool) {
	for _, layout := range httpDateLayouts {
		// Parsing in UTC keeps the result independent of the process's local zone.
		at, err := time.ParseInLocation(layout, value, time.UTC)
		if err != nil {
			continue
		}
		// time.Parse gives an unknown zone abbreviation a zero offset, which would silently
		// misread "EST" as GMT; only the zones HTTP allows are trusted.
		if name, offset := at.Zone(); offset != 0 || (name != "GMT" && name != "UTC") {
			return time.Time{}, false
		}
		return at, true
	}
	return time.Time{}, false
}
