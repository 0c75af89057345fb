// Command cat copies files (or stdin) to stdout. The images are scratch-based
// with no shell, so the otelcol image carries this one to make the collector's
// file-exporter output readable with `kubectl exec ... -- cat FILE`.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "cat:", err)
			os.Exit(1)
		}
		return
	}
	code := 0
	for _, name := range os.Args[1:] {
		if err := copyFile(name); err != nil {
			fmt.Fprintln(os.Stderr, "cat:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func copyFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(os.Stdout, f); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}
