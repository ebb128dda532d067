//go:build !unix

package redistest

import "errors"

// holdPort is not supported here: a killed server's port is left free.
func holdPort(int) (release func(), err error) {
	return nil, errors.New("redistest: holding a port is not supported on this system")
}
