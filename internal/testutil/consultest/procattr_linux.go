package consultest

import "syscall"

// sysProcAttr makes the kernel kill the agent if the test binary dies, so
// that an interrupted test run leaves no Consul behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
