package sweeper_test

import (
	"testing"

	"github.com/tasker-sweeper/retrysweeper/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }
