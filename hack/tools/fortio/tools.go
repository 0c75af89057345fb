//go:build tools

// Package tools pins fortio's command in this module.
package tools

import _ "fortio.org/fortio"
