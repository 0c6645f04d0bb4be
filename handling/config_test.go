package handling_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/backoff"
	"github.com/tasker-sweeper/retrysweeper/handling"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	t.Parallel()
	require.NoError(t, handling.DefaultConfig().Validate())
	for _, tc := range []struct {
		field  string
		change func(*handling.Config)
	}{
		{"backoff_base", func(c *handling.Config) { c.Backoff.Base = 0 }},
		{"backoff_multiplier", func(c *handling.Config) { c.Backoff.Multiplier = 0.5 }},
		{"backoff_max", func(c *handling.Config) { c.Backoff.Max = time.Millisecond }},
		{"backoff_jitter_fraction", func(c *handling.Config) { c.Backoff.JitterFraction = 2 }},
	} {
		cfg := handling.DefaultConfig()
		tc.change(&cfg)
		err := cfg.Validate()
		var fe *handling.FieldError
		require.ErrorAs(t, err, &fe, tc.field)
		require.Equal(t, tc.field, fe.Field)
		require.Contains(t, err.Error(), tc.field)
		require.NotEmpty(t, fe.Problem)
		var ce *backoff.ConfigError
		require.ErrorAs(t, err, &ce, "a backoff field's error unwraps to the backoff's own")
	}
}

func TestNewServiceRefusesAnInvalidConfig(t *testing.T) {
	t.Parallel()
	cfg := handling.DefaultConfig()
	cfg.Backoff.Base = -time.Second
	svc, err := handling.NewService(nil, cfg)
	require.Nil(t, svc)
	var fe *handling.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "backoff_base", fe.Field)
}
