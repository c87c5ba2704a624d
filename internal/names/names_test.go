package names

import "testing"

func TestCheckService(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"echo", true},
		{"Echo_2", true},
		{"a", true},
		{"_", true},
		{"a.b-c", true},
		{"", false},
		{"-a", false},
		{"a.", false},
		{"a/b", false},
		{"a b", false},
		{"a:80", false},
		{"é", false},
	}
	for _, tc := range tests {
		reason := CheckService(tc.name)
		if (reason == "") != tc.ok || ValidService(tc.name) != tc.ok {
			t.Errorf("CheckService(%q) = %q, ValidService = %t; want ok=%t", tc.name, reason, ValidService(tc.name), tc.ok)
		}
	}
}
