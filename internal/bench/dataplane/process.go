package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// stopTimeout is how long a process may take to exit after SIGTERM before
// it is killed.
const stopTimeout = 10 * time.Second

// process is a child process of the harness, its output in a log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	stdin   io.WriteCloser // nil unless started with pipes
	stdout  *bufio.Scanner // nil unless started with pipes
	done    chan struct{}
	waitErr error
}

// startProcess runs bin with args and env (added to the harness's), its
// stderr (and stdout, without pipes) appended to dir/<name>.log. With pipes,
// the caller writes its stdin and reads its stdout line by line.
func startProcess(dir, name string, env []string, pipes bool, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dataplane: %s log: %w", name, err)
	}
	fmt.Fprintf(logFile, "==> %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = logFile
	// Its own process group: a signal to the harness's terminal does not
	// reach it, and the harness stops it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	if pipes {
		if p.stdin, err = cmd.StdinPipe(); err != nil {
			logFile.Close()
			return nil, fmt.Errorf("dataplane: %s stdin: %w", name, err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			logFile.Close()
			return nil, fmt.Errorf("dataplane: %s stdout: %w", name, err)
		}
		p.stdout = bufio.NewScanner(out)
		p.stdout.Buffer(make([]byte, 64<<10), 16<<20)
	} else {
		cmd.Stdout = logFile
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("dataplane: start %s: %w", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process ID.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// readLine returns the next line of the process's stdout, failing when it
// exits or ctx ends first.
func (p *process) readLine(ctx context.Context) (string, error) {
	type line struct {
		text string
		ok   bool
	}
	got := make(chan line, 1)
	go func() {
		ok := p.stdout.Scan()
		got <- line{p.stdout.Text(), ok}
	}()
	select {
	case l := <-got:
		if !l.ok {
			<-p.done
			return "", fmt.Errorf("dataplane: %s exited (%v): %s", p.name, p.waitErr, p.logTail())
		}
		return l.text, nil
	case <-ctx.Done():
		// The reading goroutine ends when the process is stopped, which
		// closes its stdout.
		return "", fmt.Errorf("dataplane: waiting for %s: %w", p.name, ctx.Err())
	}
}

// stop closes the process's stdin (which ends the workers), sends SIGTERM,
// and kills it when it has not exited within stopTimeout.
func (p *process) stop() error {
	if p.stdin != nil {
		p.stdin.Close()
	}
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("dataplane: %s did not exit within %s of SIGTERM", p.name, stopTimeout)
	}
	return nil
}

// logTail returns the end of the process's log.
func (p *process) logTail() string {
	raw, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	if len(raw) > 4000 {
		raw = raw[len(raw)-4000:]
	}
	return string(raw)
}

// waitFor polls check every 100 ms until it succeeds, p exits, or timeout.
func waitFor(ctx context.Context, p *process, timeout time.Duration, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("dataplane: %s exited before %s (%v): %s", p.name, what, p.waitErr, p.logTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dataplane: %s: not after %s: %w", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// freePort returns a loopback TCP port free at the time of the call.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("dataplane: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stopAll stops ps in reverse order and joins their errors.
func stopAll(ps []*process) error {
	var errs []error
	for i := len(ps) - 1; i >= 0; i-- {
		errs = append(errs, ps[i].stop())
	}
	return errors.Join(errs...)
}
