// Package names holds the one rule for the names of the services Trellis
// serves: a service name must be carried in an xds:///name dial target and
// matched as a virtual host domain, so it is made of letters, digits, '_',
// and '.' or '-' between them. The translator leaves out services whose
// name breaks it, and policy validation refuses policies naming them.
//
// This package is a leaf: it must not import any other Trellis package.
package names

import "regexp"

// servicePattern is what a service name must look like.
var servicePattern = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9._-]*[A-Za-z0-9_])?$`)

// ServiceAccepted describes the accepted service names, for error messages.
const ServiceAccepted = "letters, digits, '_', and '.' or '-' between them"

// ValidService reports whether name can be served as a service name.
func ValidService(name string) bool { return servicePattern.MatchString(name) }

// CheckService returns why name cannot be served as a service name, or ""
// when it can.
func CheckService(name string) string {
	switch {
	case name == "":
		return "empty service name"
	case !ValidService(name):
		return "the name cannot be carried in an xds:/// target; accepted: " + ServiceAccepted
	}
	return ""
}
