package dataplane

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"syscall"
)

// startProfile starts a CPU profile into path, and returns the function
// that ends it; with an empty path it does nothing.
func startProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		return nil
	}, nil
}

// profileOnSignals starts a CPU profile on SIGUSR1 and, on SIGUSR2, ends it
// and renames it to dir/profile-<n>.pprof (n counting from 1), so that the
// file appears complete. It returns the function that stops listening.
func profileOnSignals(dir string) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		n := 0
		var end func() error
		for {
			select {
			case <-done:
				if end != nil {
					_ = end() // shutting down: the partial profile is not wanted
				}
				return
			case sig := <-sigs:
				switch {
				case sig == syscall.SIGUSR1 && end == nil:
					var err error
					if end, err = startProfile(filepath.Join(dir, "partial.pprof")); err != nil {
						fmt.Fprintln(os.Stderr, err)
					}
				case sig == syscall.SIGUSR2 && end != nil:
					n++
					if err := end(); err != nil {
						fmt.Fprintln(os.Stderr, err)
					} else if err := os.Rename(filepath.Join(dir, "partial.pprof"), filepath.Join(dir, fmt.Sprintf("profile-%d.pprof", n))); err != nil {
						fmt.Fprintln(os.Stderr, err)
					}
					end = nil
				}
			}
		}
	})
	return func() {
		signal.Stop(sigs)
		close(done)
		wg.Wait()
	}
}
