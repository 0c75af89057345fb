//go:build !linux

package ztunnel

import (
	"syscall"

	"github.com/vishvananda/netns"

	"github.com/ambient-mesh/mesh/pkg/redirect"
)

func nsControl(netns.NsHandle, redirect.SocketOptions) func(string, string, syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return redirect.ErrUnsupported }
}
