package admin_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/xdsserver/admin"
)

// TestUIGuardedLikeDebug checks that /ui/ is answered for loopback callers
// and, for others, only as DebugAuth decides.
func TestUIGuardedLikeDebug(t *testing.T) {
	ui := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ui:"+r.URL.Path) })
	s := admin.New(admin.Config{UI: ui, DebugAuth: func(r *http.Request) error {
		if r.Header.Get("Authorization") == "" {
			return fmt.Errorf("send a token: %w", admin.ErrNoCredentials)
		}
		return fmt.Errorf("bad token")
	}})
	for _, tc := range []struct {
		path, remote, auth string
		code               int
		body               string
	}{
		{"/ui/", "127.0.0.1:5000", "", http.StatusOK, "ui:/ui/"},
		{"/ui/api/state", "[::1]:5000", "", http.StatusOK, "ui:/ui/api/state"},
		{"/ui/", "10.1.2.3:5000", "", http.StatusUnauthorized, ""},
		{"/ui/", "10.1.2.3:5000", "Bearer x", http.StatusForbidden, ""},
		{"/ui", "127.0.0.1:5000", "", http.StatusMovedPermanently, ""},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		req.RemoteAddr = tc.remote
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != tc.code || (tc.body != "" && rec.Body.String() != tc.body) {
			t.Errorf("GET %s from %s: %d %q, want %d %q", tc.path, tc.remote, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if want := "/ui/\n"; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("index %q lacks /ui/", rec.Body.String())
	}
}
