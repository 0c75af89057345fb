//go:build !linux

package proxyadmin

import "errors"

// ReleaseExecutablePages is Linux-only (MADV_PAGEOUT).
func ReleaseExecutablePages() (int64, error) {
	return 0, errors.New("release executable pages: needs Linux")
}
