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
{{- .Values.serviceAccount.name | default "tether" -}}
{{- end -}}
