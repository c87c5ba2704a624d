package dataplane

import (
	"os"
	"testing"
	"time"
)

func TestReadUsageOfThisProcess(t *testing.T) {
	before, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.RSS <= 0 || before.PeakRSS < before.RSS {
		t.Fatalf("RSS %d, peak %d: want 0 < RSS <= peak", before.RSS, before.PeakRSS)
	}
	// Burn CPU until the kernel has counted at least a few ticks, and touch
	// 64 MiB so that the high-water mark moves.
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	deadline := time.Now().Add(30 * time.Second)
	var after ProcessUsage
	for {
		x := 0
		for i := range 10_000_000 {
			x += i ^ int(buf[i%len(buf)])
		}
		buf[0] = byte(x)
		after, err = ReadUsage(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after.CPU >= before.CPU+5*clockTick || time.Now().After(deadline) {
			break
		}
	}
	if after.CPU < before.CPU+5*clockTick {
		t.Errorf("CPU went from %s to %s while spinning, want it to grow", before.CPU, after.CPU)
	}
	if after.PeakRSS < before.RSS+60<<20 {
		t.Errorf("peak RSS %d after touching 64 MiB, want at least %d", after.PeakRSS, before.RSS+60<<20)
	}
	buf = nil
	if err := ResetPeakRSS(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	reset, err := ReadUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if reset.PeakRSS > reset.RSS+(4<<20) {
		t.Errorf("peak RSS %d right after reset, RSS %d: want the peak back near the RSS", reset.PeakRSS, reset.RSS)
	}
}

func TestReadUsageOfMissingProcess(t *testing.T) {
	if _, err := ReadUsage(1 << 30); err == nil {
		t.Error("reading a process that does not exist succeeded")
	}
}
