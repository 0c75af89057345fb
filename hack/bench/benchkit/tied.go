package benchkit

import (
	"os/exec"
	"runtime"
	"syscall"
)

// StartTied starts cmd so that the kernel sends it sig if this program
// dies, and returns a channel that gets cmd.Wait's result once it has
// exited (do not call cmd.Wait yourself).
//
// Pdeathsig fires when the thread that started the child ends, not the
// process (go.dev/issue/27505), and the Go runtime ends a thread whose
// goroutine exits while locked to it; a child started from an arbitrary
// goroutine can be killed mid-run. So the child is started from a
// goroutine locked to its own thread that stays until the child is gone.
func StartTied(cmd *exec.Cmd, sig syscall.Signal) (<-chan error, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = sig
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread ends with this goroutine, after
		// the child.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
