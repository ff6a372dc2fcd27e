package cluster

import (
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

func TestMain(m *testing.M) {
	// go-redis logs failed dials to stderr; the tests kill Redis on purpose.
	redis.SetLogger(RedisLogger(zerolog.Nop()))
	os.Exit(m.Run())
}
