package sweeper_test

import (
	"testing"

	"retrysweeper/internal/testdb"
)

func TestMain(m *testing.M) { testdb.Main(m) }
