//go:build !linux

package consultest

import (
	"syscall"
	"time"
)

// sysProcAttr returns nil: only Linux can tie the agent's life to the test
// binary's.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// waitStopped gives SIGSTOP a moment to take effect where the process state
// cannot be read.
func waitStopped(int, time.Duration) error {
	time.Sleep(100 * time.Millisecond)
	return nil
}
