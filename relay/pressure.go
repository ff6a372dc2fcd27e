package relay

import "relayq/pressure"

// Pressure is the back pressure intake obeys; *pressure.Monitor is one.
// The running instance owns it (samples it before serving, runs and stops
// it): the server only asks.
type Pressure interface {
	// Level returns the current level and the resource that sets it (""
	// at normal). It is asked at every MAIL, so it must be cheap and safe
	// for concurrent use.
	Level() (pressure.Level, pressure.Resource)
	// NoRoom reports that the queue refused a message for want of disk
	// space: free_disk should go to high at once, so that the next MAIL is
	// refused before its body is sent.
	NoRoom()
}

var _ Pressure = (*pressure.Monitor)(nil)

// noPressure is the Pressure of a server without back pressure: always
// normal.
type noPressure struct{}

func (noPressure) Level() (pressure.Level, pressure.Resource) { return pressure.Normal, "" }
func (noPressure) NoRoom()                                    {}
