// Command ambient-cni is the chained CNI plugin of the ambient mesh: on ADD it
// will install the capture rules (pkg/redirect) in the new pod's netns before
// its containers start. Until the capture issue lands it passes the previous
// plugin's result through unchanged, so a chain that includes it keeps working.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/ambient-mesh/mesh/pkg/version"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "--version" {
		fmt.Println("ambient-cni", version.String())
		return
	}
	switch os.Getenv("CNI_COMMAND") {
	case "VERSION":
		fmt.Println(`{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}`)
	case "ADD":
		// Pass the previous result through: a chained plugin's output is the chain's result.
		conf, err := io.ReadAll(os.Stdin)
		if err != nil {
			fail(err)
		}
		var c struct {
			PrevResult json.RawMessage `json:"prevResult"`
		}
		if err := json.Unmarshal(conf, &c); err != nil {
			fail(fmt.Errorf("parse network config from stdin: %w", err))
		}
		if len(c.PrevResult) == 0 {
			fail(fmt.Errorf("ambient-cni must be chained after an interface plugin: no prevResult in the config"))
		}
		os.Stdout.Write(c.PrevResult)
	case "DEL", "CHECK", "GC", "STATUS":
	default:
		fail(fmt.Errorf("CNI_COMMAND %q not supported", os.Getenv("CNI_COMMAND")))
	}
}

func fail(err error) {
	json.NewEncoder(os.Stdout).Encode(map[string]any{"cniVersion": "1.0.0", "code": 999, "msg": "ambient-cni: " + err.Error()})
	os.Exit(1)
}
