package hbone

import (
	"context"
)

func (c *Client) dialH3(ctx context.Context, req *Request) (muxConn, error) {
	return nil, &Error{Op: "dial", Peer: req.Address.String(), Err: ErrProtocol}
}
