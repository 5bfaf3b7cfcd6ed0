package gateway_test

import (
	"net"

	"github.com/kmsgate/kmsgate/backends"
)

func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

var errUnavailable = backends.ErrUnavailable
