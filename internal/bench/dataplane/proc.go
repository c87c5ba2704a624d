package dataplane

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ),
// 100 Hz on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// ProcessUsage is what the kernel says about one process.
type ProcessUsage struct {
	// CPU is user plus system time of every thread so far.
	CPU time.Duration
	// RSS and PeakRSS are the resident set now and its high-water mark
	// since the process started or since ResetPeakRSS, in bytes.
	RSS, PeakRSS int64
}

// ReadUsage reads /proc/<pid>/stat and /proc/<pid>/status.
func ReadUsage(pid int) (ProcessUsage, error) {
	var u ProcessUsage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("dataplane: cpu of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis. utime and stime are fields
	// 14 and 15, so the 12th and 13th after it.
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return u, fmt.Errorf("dataplane: /proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 13 {
		return u, fmt.Errorf("dataplane: /proc/%d/stat: %d fields after the name, want at least 13", pid, len(fields))
	}
	for _, f := range fields[11:13] {
		ticks, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return u, fmt.Errorf("dataplane: /proc/%d/stat: cpu ticks %q: %w", pid, f, err)
		}
		u.CPU += time.Duration(ticks) * clockTick
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("dataplane: memory of pid %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return u, fmt.Errorf("dataplane: /proc/%d/status: %s %q: %w", pid, key, value, err)
		}
		if key == "VmRSS" {
			u.RSS = kb << 10
		} else {
			u.PeakRSS = kb << 10
		}
	}
	if u.PeakRSS == 0 {
		return u, fmt.Errorf("dataplane: /proc/%d/status has no VmHWM", pid)
	}
	return u, nil
}

// ResetPeakRSS sets the process's RSS high-water mark back to its current
// RSS (clear_refs value 5), so that PeakRSS covers what follows.
func ResetPeakRSS(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("dataplane: reset peak RSS of pid %d: %w", pid, err)
	}
	return nil
}
