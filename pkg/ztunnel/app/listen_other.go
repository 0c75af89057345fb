//go:build !linux

package app

import "net"

// listenReusePort is a plain listener off Linux (ztunnel runs on Linux).
var listenReusePort net.ListenConfig
