package sweeper_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tasker-sweeper/retrysweeper/sweeper"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	t.Parallel()
	require.NoError(t, sweeper.DefaultConfig().Validate())
	edge := sweeper.Config{
		BatchSize: sweeper.MaxBatchSize, Workers: sweeper.MaxWorkers, BatchTimeout: time.Nanosecond,
		NotifyChannel: strings.Repeat("c", sweeper.MaxNotifyChannelLen),
	}
	require.NoError(t, edge.Validate(), "every limit is inclusive")

	for _, tc := range []struct {
		field  string
		change func(*sweeper.Config)
	}{
		{"batch_size", func(c *sweeper.Config) { c.BatchSize = 0 }},
		{"batch_size", func(c *sweeper.Config) { c.BatchSize = sweeper.MaxBatchSize + 1 }},
		{"workers", func(c *sweeper.Config) { c.Workers = 0 }},
		{"workers", func(c *sweeper.Config) { c.Workers = sweeper.MaxWorkers + 1 }},
		{"batch_timeout", func(c *sweeper.Config) { c.BatchTimeout = 0 }},
		{"batch_timeout", func(c *sweeper.Config) { c.BatchTimeout = -time.Second }},
		{"notify_channel", func(c *sweeper.Config) { c.NotifyChannel = strings.Repeat("c", sweeper.MaxNotifyChannelLen+1) }},
	} {
		cfg := sweeper.DefaultConfig()
		tc.change(&cfg)
		err := cfg.Validate()
		var fe *sweeper.FieldError
		require.ErrorAs(t, err, &fe, "%+v", cfg)
		require.Equal(t, tc.field, fe.Field)
		require.Contains(t, err.Error(), tc.field)
		require.NotEmpty(t, fe.Problem)
	}
}

func TestNewRefusesAnInvalidConfig(t *testing.T) {
	t.Parallel()
	sw, err := sweeper.New(nil, sweeper.Config{BatchSize: 10, Workers: 100, BatchTimeout: time.Second}, discard, sweeper.Hooks{})
	require.Nil(t, sw)
	var fe *sweeper.FieldError
	require.ErrorAs(t, err, &fe)
	require.Equal(t, "workers", fe.Field)
}
