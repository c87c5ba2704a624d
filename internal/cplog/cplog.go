// Package cplog adapts log/slog to the logger interface of
// go-control-plane. It owns nothing else and imports no Trellis package.
package cplog

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/envoyproxy/go-control-plane/pkg/log"
)

// Logger writes go-control-plane's log lines to a slog.Logger.
// go-control-plane logs every watch and response at info level, so Infof
// maps to Debug.
type Logger struct{ l *slog.Logger }

var _ log.Logger = Logger{}

// New returns a go-control-plane logger writing to l.
func New(l *slog.Logger) Logger { return Logger{l: l} }

func (l Logger) log(level slog.Level, format string, args []any) {
	if !l.l.Enabled(context.Background(), level) {
		return
	}
	l.l.Log(context.Background(), level, fmt.Sprintf(format, args...))
}

// Debugf logs at debug level.
func (l Logger) Debugf(format string, args ...any) { l.log(slog.LevelDebug, format, args) }

// Infof logs at debug level: go-control-plane's info lines are routine.
func (l Logger) Infof(format string, args ...any) { l.log(slog.LevelDebug, format, args) }

// Warnf logs at warn level.
func (l Logger) Warnf(format string, args ...any) { l.log(slog.LevelWarn, format, args) }

// Errorf logs at error level.
func (l Logger) Errorf(format string, args ...any) { l.log(slog.LevelError, format, args) }
