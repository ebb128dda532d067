package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// UsageError is an error in the command line; Printed says whether the flag
// package has already shown it.
type UsageError struct {
	Err     error
	Printed bool
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// The original locksmith's defaults for the Redis server.
const (
	defaultRedisHost = "localhost"
	defaultRedisPort = "6379"
)

// RedisFlag is a demo's -redis flag: the address of a real Redis, or ""
// when the flag is not given. An empty host or port takes the original
// locksmith defaults, localhost and 6379.
type RedisFlag struct {
	Addr string
}

// String returns the address.
func (f *RedisFlag) String() string { return f.Addr }

// Set completes s with the defaults and checks it.

func (f *RedisFlag) Set(s string) error {
	addr, err := redisAddr(s)
	if err != nil {
		return err
	}
	f.Addr = addr
	return nil
}

// redisAddr completes a host:port, a host or a :port with the defaults for
// the missing parts.
func redisAddr(s string) (string, error) {
	host, port := s, ""
	if strings.Contains(s, ":") {
		var err error
		host, port, err = net.SplitHostPort(s)
		if err != nil {
			return "", fmt.Errorf("want host:port, host or :port (an IPv6 host in brackets): %w", err)
		}
	}
	if host == "" {
		host = defaultRedisHost
	}
	if port == "" {
		port = defaultRedisPort
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return net.JoinHostPort(host, port), nil
}

// Main runs a demo's run with the command line, and exits as a command
// does: 0 when done or asked for help, 2 for a usage error, 1 for another
// error, said on stderr after name.
func Main(name string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A second Ctrl-C kills the process at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil {
		return
	}
	var ue *UsageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.As(err, &ue):
		if !ue.Printed {
			fmt.Fprintln(os.Stderr, name+":", err)
		}
		os.Exit(2)
	}
	fmt.Fprintln(os.Stderr, name+":", err)
	os.Exit(1)
}
