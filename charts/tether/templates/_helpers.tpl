{{- define "tether.labels" -}}
app.kubernetes.io/name: tether
app.kubernetes.io/part-of: tether
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: tether
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "tether.fullname" .) -}}
{{- end -}}

{{- /*
The prefix of every object's name: the release name, or
"<release>-tether" when the release name does not contain "tether". Two
releases never share a name, cluster-scoped or not.
*/}}
{{- define "tether.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether.controllerName" -}}
{{- printf "%s-controller" (include "tether.fullname" .) -}}
{{- end -}}
